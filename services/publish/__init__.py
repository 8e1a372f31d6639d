"""The publish service: the Beacon v2 API over released data, with GA4GH Passport visa authorization."""
