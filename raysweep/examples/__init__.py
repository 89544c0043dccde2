"""Small runnable training functions used by the example configs and the tests."""
