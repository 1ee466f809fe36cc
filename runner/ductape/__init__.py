"""Talking to Ductape: wire format (wire), job → operation (operations), HTTP client (client)."""
