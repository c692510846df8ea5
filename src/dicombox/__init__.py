"""dicombox: DICOM router, MPPS relay and portable media manager for a small appliance."""

__version__ = "0.1.0"
