"""The cohort: discovery of cases, case ids, validation, patient-grouped splits."""
