"""What several test modules share: paths, generated clips, the CLI and service harnesses, the reference."""
