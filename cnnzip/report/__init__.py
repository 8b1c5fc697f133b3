"""Reports: report.json for programs, report.md and plots for people."""

from cnnzip.report.tables import codebook_rows, dense_rows, quant_rows
from cnnzip.report.write import write_report

__all__ = ["dense_rows", "codebook_rows", "quant_rows", "write_report"]
