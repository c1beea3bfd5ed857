"""What a sweep found and how the machine is set up: `tuneloop report`, `tuneloop dashboard`,
`tuneloop doctor`."""
