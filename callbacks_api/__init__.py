"""The callbacks API: approval pages for people and command callbacks for downstream systems."""
