"""tools/bench: ocifs measured side by side against a full pull, ratarmount and disk."""
