"""Wire protocol, clip readers, recordings and ZeroMQ sources/sinks."""
