"""What lets an operator see the server at work: the call record every protocol boundary keeps
(``calls``), traces (``tracing``) and logs (``logs``). Metrics and statistics live in
``modelyard.metrics``; this package holds what they share with traces and logs."""
