//! Azure provider: filled in by its own change.
