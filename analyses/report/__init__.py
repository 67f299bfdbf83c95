"""Reports: one self-contained HTML page (:mod:`.html`), its sections (:mod:`.sections`), the
shared figure style (:mod:`.style`) and the static export of figures (:mod:`.export`).

Only :mod:`.html` is imported here, so that any analysis can import :mod:`.style` without
pulling in the sections, which import every analysis.
"""

from analyses.report.html import REPORT_NAME, RESULTS_NAME, Section, new_folder, render_html, to_jsonable, write_csv, write_report

__all__ = [
    "REPORT_NAME",
    "RESULTS_NAME",
    "Section",
    "new_folder",
    "render_html",
    "to_jsonable",
    "write_csv",
    "write_report",
]
