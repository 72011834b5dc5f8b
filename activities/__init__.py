"""Activities: the only code that touches DynamoDB, SNS, SQS, HTTP or the Temporal client."""
