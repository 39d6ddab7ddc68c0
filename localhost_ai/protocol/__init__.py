"""Pydantic request/response models that mirror OpenAI, plus our extension fields."""
