"""`tuneserve loadtest`: closed- and open-loop load against the HTTP contract, with honest latency."""
