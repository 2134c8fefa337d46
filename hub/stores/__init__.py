"""What the hub and the service both read and write: profiles, quotas and usage."""
