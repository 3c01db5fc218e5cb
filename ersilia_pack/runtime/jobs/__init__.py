"""Jobs: big runs split in chunks, claimed, retried and taken over through the store."""
