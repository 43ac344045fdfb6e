//! TODO(stable): owned by the stable work in progress.
