"""Synthetic cohorts written as DICOM plus FHIR bundles: what the shipped models are trained and tested on."""
