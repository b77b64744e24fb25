"""One module per way out behind the seam of `sync.connector`."""
