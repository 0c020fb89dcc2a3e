"""What the tests share that is not a fixture: reading the trail, running bemi-pg, the apps
and recorders the integration tests drive."""
