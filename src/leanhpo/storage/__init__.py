"""Storage service: disk usage and monitoring, checkpoint size estimates, the no-space error."""
