"""The mpps service (Data-Router): MPPS SCP and SCU, journal, relay, RIS notifications."""
