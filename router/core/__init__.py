"""The core: messages, configuration, errors, economics, rules and routing methods as
data, reason codes, windows, identity hashing — what every other package builds on."""
