"""The C99 backend: the program writer (graph, arena plan, header), the kernel forms and the
cost model that chooses among them, the runtime header."""
