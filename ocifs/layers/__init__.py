"""Layer formats: turning a layer blob into entries, and reading an entry's bytes."""
