"""Reports: report.json for programs, report.md and plots for people."""

from cnnzip.report.tables import layer_rows
from cnnzip.report.write import write_report

__all__ = ["layer_rows", "write_report"]
