"""The Weft certificate authority: roots, intermediates and workload SVIDs."""
