"""What the user declared: settings, pipeline files, handler loading and code identity."""
