"""The model gallery: index files, URI schemes, resumable verified downloads, the blob store and install jobs."""
