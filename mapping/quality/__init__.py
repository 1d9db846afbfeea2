"""Fidelity for quality teams, pure: records read from our resources, Measures and
MeasureReports, outcome linkage arithmetic and SQL on FHIR ViewDefinitions."""
