//! TODO(snapshot): owned by the snapshot work in progress.
