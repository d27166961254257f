"""Data plumbing the library and the generic commands share: image batches, image files, labelled folders."""
