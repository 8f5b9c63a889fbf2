"""The REST surface: routes, request and response models, the route table."""
