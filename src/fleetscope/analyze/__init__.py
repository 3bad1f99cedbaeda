"""Analytics: answers to the five questions of DESIGN.md, computed through the store ports."""
