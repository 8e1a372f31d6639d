"""The anonymize service: pseudonymizes raw variant, clinical and consent events (gdx.raw.* -> gdx.pseudo.*)."""
