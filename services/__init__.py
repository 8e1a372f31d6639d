"""gdx, the Genomic Data eXchange: consent-aware streaming of genomic and clinical data over Kafka."""

__version__ = "0.1.0"
