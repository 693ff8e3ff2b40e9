"""pagedserve engine: offline API and engine core."""
