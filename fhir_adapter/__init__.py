"""fhir_adapter"""
