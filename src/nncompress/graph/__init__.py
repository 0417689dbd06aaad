"""Model capture (the ops one forward runs), scope names and matching, transformation layouts."""
