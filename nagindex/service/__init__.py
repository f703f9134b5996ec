"""The query service: `nag serve` holds an index and its models warm and answers queries
over HTTP (`app`); `Client` sends them (`client`); `wire` is the one request format both speak."""
