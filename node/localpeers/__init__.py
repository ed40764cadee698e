"""Real peers (Orthanc, the FHIR engine) started locally in the foreground for the demo and the integration tests."""
