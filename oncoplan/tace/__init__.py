"""The TACE core (MeWM): the action base, the dynamics model, the response layout and the world model
the planner simulates with."""
