"""Synthetic cohorts written as DICOM plus FHIR bundles and a site datalist, with each lesion's oracle (see README.md)."""
