"""The campaign store: per-task shards (atomic), the single-writer gather into store.h5, and the
read-only views that downstream experiments, `toolkit show` and the plots use.  This package is
the only place HDF5 files are written."""
