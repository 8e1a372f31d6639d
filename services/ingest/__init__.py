"""The ingest service: reads what centers send (VCF/BCF, phenopackets, consent) into raw events."""
