"""The consent_gate service: releases pseudonymized data only for participants whose consent allows it."""
