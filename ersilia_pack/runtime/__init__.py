"""What a generated app imports: bundle loading, the run engine, I/O and typing, the app factory."""
