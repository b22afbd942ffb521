"""The study report: one self-contained HTML file (``tunebook report STUDY``).

Example:
    >>> from tunebook.report import write_report
    >>> write_report(study, "runs/demo/report.html")  # doctest: +SKIP
"""

from tunebook.report._figures import figure_to_data_uri, image_tag
from tunebook.report._write import default_report_path, render_report, write_report

__all__ = ["default_report_path", "figure_to_data_uri", "image_tag", "render_report", "write_report"]
