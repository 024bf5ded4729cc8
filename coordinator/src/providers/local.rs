//! local provider
