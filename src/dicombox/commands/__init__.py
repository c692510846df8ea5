"""Sub-commands of ``dicombox`` that read the services' state."""
