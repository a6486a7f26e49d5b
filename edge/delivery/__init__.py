"""A verdict to the line: the decision contract, the journal, MQTT publishing, the gate."""
