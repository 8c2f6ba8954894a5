"""Files: the SAE directory format and atomic writes."""
